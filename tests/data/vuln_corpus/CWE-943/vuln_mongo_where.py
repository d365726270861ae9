class ProductQueries:
    def __init__(self, collection):
        self.collection = collection

    def cheaper_than(self, limit):
        return list(self.collection.find({"$where": f"this.price < {limit}"}))
