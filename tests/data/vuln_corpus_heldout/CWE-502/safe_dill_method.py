import json


class JobQueue:
    def pop(self, redis):
        return json.loads(redis.lpop("jobs"))
