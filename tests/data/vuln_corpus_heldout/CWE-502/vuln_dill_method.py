import dill


class JobQueue:
    def pop(self, redis):
        return dill.loads(redis.lpop("jobs"))
