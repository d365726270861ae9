from urllib.parse import urlparse
from urllib.request import urlopen

AVATAR_HOST = "avatars.example.com"


def fetch_avatar(profile):
    avatar_url = profile["avatar"]
    parts = urlparse(avatar_url)
    if parts.scheme != "https" or parts.hostname != AVATAR_HOST:
        raise ValueError("avatar must be on the avatar host")
    with urlopen(avatar_url) as resp:
        return resp.read()
