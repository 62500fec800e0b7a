"""Local stand-ins for the two things nobody can reach from a laptop or CI.

- `store`: the embedded S3-compatible store (SeaweedFS ``weed mini``).
- `app` / `server`: the UserTesting Results API sandbox, with a fault-injecting proxy in front of the store.

The pipeline never imports this package; only tests, the CLI and the demo/dev stacks do.
"""
