from urllib.request import urlopen


def fetch_avatar(profile):
    avatar_url = profile["avatar"]
    with urlopen(avatar_url) as resp:
        return resp.read()
