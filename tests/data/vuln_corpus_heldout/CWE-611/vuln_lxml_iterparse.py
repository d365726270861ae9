from lxml import etree


def rows(path):
    for _, elem in etree.iterparse(path, resolve_entities=True):
        yield elem.tag
