from lxml import etree


def load_feed(data):
    parser = etree.XMLParser(resolve_entities=False, huge_tree=False)
    return etree.fromstring(data, parser)
