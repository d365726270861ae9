from lxml import etree


def load_feed(data):
    parser = etree.XMLParser(huge_tree=True, no_network=True)
    return etree.fromstring(data, parser)
