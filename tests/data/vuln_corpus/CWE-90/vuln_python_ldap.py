import ldap


class Directory:
    def __init__(self, uri):
        self.conn = ldap.initialize(uri)

    def groups_of(self, member):
        query = "(member=uid=" + member + ",ou=people,dc=example,dc=com)"
        return self.conn.search_s("ou=groups,dc=example,dc=com", ldap.SCOPE_SUBTREE, query)
