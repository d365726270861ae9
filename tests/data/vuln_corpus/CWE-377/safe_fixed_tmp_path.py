import json
import os

CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "app-cache.json")


class Cache:
    def save(self, payload):
        with open(CACHE, "w") as fh:
            json.dump(payload, fh)
