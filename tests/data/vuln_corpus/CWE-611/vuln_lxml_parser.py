from lxml import etree as ET


def parse_invoice(xml_bytes):
    parser = ET.XMLParser(resolve_entities=True)
    return ET.fromstring(xml_bytes, parser)
