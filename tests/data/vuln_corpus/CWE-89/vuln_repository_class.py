class OrderRepository:
    def __init__(self, connection):
        self.connection = connection

    def by_customer(self, customer_id):
        sql = "SELECT id, total FROM orders WHERE customer = %s" % customer_id
        cursor = self.connection.cursor()
        cursor.execute(sql)
        return cursor.fetchall()
