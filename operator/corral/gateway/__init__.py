"""The session gateway: one authenticated door into every session's runner.

`routes` maps a request path to a session and the permission it needs, `auth` checks the
caller with TokenReview and SubjectAccessReview, `directory` knows each session's state and
its current ready pod and wakes sleeping ones, `proxy` forwards HTTP, SSE and WebSocket,
`limits` bounds each user, `server` ties them into one aiohttp application.
"""
