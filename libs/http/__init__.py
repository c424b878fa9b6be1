"""HTTP pieces every service with a public endpoint shares: API-key auth, roles, audit and
request metrics."""
