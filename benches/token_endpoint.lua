-- wrk script: client_credentials token requests (client_secret_basic).
-- Used by benches/token_endpoint.sh.
wrk.method = "POST"
wrk.body = "grant_type=client_credentials&scope=calendar.read"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic YmVuY2g6YmVuY2gtc2VjcmV0" -- bench:bench-secret
