import re

SLUG = r"^(\w+-?)*$"


def valid_slug(text):
    return re.fullmatch(SLUG, text) is not None
