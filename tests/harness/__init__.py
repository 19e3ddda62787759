"""What the test suites and the benchmarks share: real processes on free ports (procs),
the rate-limit service (ratelimit), a whole topology (stack, budgets), the deploy files
and their stacks (deploy_*), and in-process fakes of the request path's seams (fakes)."""
