import xml.sax
from xml.sax.handler import feature_external_ges


def count_tags(path, handler):
    reader = xml.sax.make_parser()
    reader.setFeature(feature_external_ges, False)
    reader.setContentHandler(handler)
    reader.parse(path)
