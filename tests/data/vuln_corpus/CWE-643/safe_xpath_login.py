from lxml import etree

USERS = etree.parse("users.xml", etree.XMLParser(resolve_entities=False))


def check(name, pin):
    return bool(USERS.xpath("//user[@name=$n and @pin=$p]", n=name, p=pin))
