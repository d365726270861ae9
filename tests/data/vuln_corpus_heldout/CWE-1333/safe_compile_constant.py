import re

SLUG = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"


def valid_slug(text):
    return re.fullmatch(SLUG, text) is not None
