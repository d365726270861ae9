import json

CACHE = "/tmp/app-cache.json"


class Cache:
    def save(self, payload):
        with open(CACHE, "w") as fh:
            json.dump(payload, fh)
