import logging

logger = logging.getLogger(__name__)


def rotate(client, new_api_key):
    client.set_key(new_api_key)
    logger.warning("rotated key to %s", new_api_key)
