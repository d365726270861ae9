import subprocess


class Converter:
    def to_pdf(self, doc_path):
        done = subprocess.run(["libreoffice", "--headless", "--convert-to", "pdf", doc_path], capture_output=True)
        return done.stdout
