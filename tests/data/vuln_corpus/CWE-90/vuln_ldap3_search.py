from ldap3 import Connection


def find_user(conn: Connection, uid):
    conn.search("dc=example,dc=com", f"(&(objectClass=person)(uid={uid}))", attributes=["cn"])
    return conn.entries
