import socket
import ssl


def open_channel(host):
    ctx = ssl.create_default_context()
    return ctx.wrap_socket(socket.create_connection((host, 443)), server_hostname=host)
