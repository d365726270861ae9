async def fetch_user(pool, email):
    async with pool.acquire() as conn:
        query = "SELECT * FROM accounts WHERE email = '{}'".format(email)
        return await conn.fetchrow(query)
