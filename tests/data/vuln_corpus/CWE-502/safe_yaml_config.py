import yaml


class ConfigLoader:
    def load(self, stream):
        return yaml.safe_load(stream)
