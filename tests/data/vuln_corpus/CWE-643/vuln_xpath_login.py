from lxml import etree

USERS = etree.parse("users.xml", etree.XMLParser(resolve_entities=False))


def check(name, pin):
    expr = "//user[@name='%s' and @pin='%s']" % (name, pin)
    return bool(USERS.xpath(expr))
