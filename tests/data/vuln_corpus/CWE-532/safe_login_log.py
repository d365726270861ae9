import logging

log = logging.getLogger("auth")


def authenticate(username, password, backend):
    log.info("login attempt user=%s", username)
    return backend.check(username, password)
