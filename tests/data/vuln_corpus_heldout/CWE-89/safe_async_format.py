async def fetch_user(pool, email):
    async with pool.acquire() as conn:
        return await conn.fetchrow("SELECT * FROM accounts WHERE email = $1", email)
