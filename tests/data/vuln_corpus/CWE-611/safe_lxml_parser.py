from lxml import etree as ET


def parse_invoice(xml_bytes):
    parser = ET.XMLParser(resolve_entities=False, no_network=True)
    return ET.fromstring(xml_bytes, parser)
