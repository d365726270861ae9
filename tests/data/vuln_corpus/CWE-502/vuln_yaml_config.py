import yaml


class ConfigLoader:
    def load(self, stream):
        return yaml.load(stream, Loader=yaml.Loader)
