from ldap3 import Connection
from ldap3.utils.conv import escape_filter_chars


def find_user(conn: Connection, uid):
    conn.search("dc=example,dc=com", f"(&(objectClass=person)(uid={escape_filter_chars(uid)}))", attributes=["cn"])
    return conn.entries
