"""Load generators and what they measure: wrk (closed loop), h2load (fixed rate), CPU time."""
