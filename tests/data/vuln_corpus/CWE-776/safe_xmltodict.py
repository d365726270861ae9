import xmltodict


def to_dict(payload):
    return xmltodict.parse(payload)
