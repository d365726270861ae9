from defusedxml.ElementTree import iterparse


def rows(path):
    for _, elem in iterparse(path):
        yield elem.tag
