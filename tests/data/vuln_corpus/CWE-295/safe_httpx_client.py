import httpx


class BillingApi:
    def __init__(self, base):
        self.http = httpx.Client(base_url=base, verify="/etc/ssl/certs/billing-ca.pem")

    def invoices(self):
        return self.http.get("/invoices").json()
