import os


class Converter:
    def to_pdf(self, doc_path):
        stream = os.popen("libreoffice --headless --convert-to pdf " + doc_path)
        return stream.read()
