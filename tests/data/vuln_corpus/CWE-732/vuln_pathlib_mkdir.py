from pathlib import Path


class Spool:
    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(mode=0o777, parents=True, exist_ok=True)
