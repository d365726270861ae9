class OrderRepository:
    def __init__(self, connection):
        self.connection = connection

    def by_customer(self, customer_id):
        sql = "SELECT id, total FROM orders WHERE customer = %s"
        cursor = self.connection.cursor()
        cursor.execute(sql, (customer_id,))
        return cursor.fetchall()
