"""The plans of the AWS tests: ``str.format`` templates (``{url}``: the emulator's; braces
doubled), made of parts that the tests' own plans reuse."""

#: The analysis settings of every test plan, up to its gates.
ANALYSIS_SETTINGS = """\
analysis:
  interval: 60s
  delay: 60s
  min_requests: 100
  max_hold: 5m
  gates:
"""
#: The gates of most test plans: the candidate's errors against the baseline's, its p99.
GATES = """\
    - name: errors
      metric: error_rate
      vs_baseline: {{max_increase: 0.5pp}}
    - name: p99
      metric: latency_p99
      max: 300ms
"""
#: The canary the tests run unless they give a plan of their own.
PLAN = (
    """\
version: 1
name: churn-v2-canary
target:
  provider: sagemaker
  endpoint: churn
  region: us-east-1
  endpoint_url: {url}
candidate:
  name: v2
  model: churn-v2
  instance_type: ml.m5.large
  instance_count: 1
strategy:
  type: canary
  steps:
    - weight: 10
    - analyze: 5m
    - weight: 50
    - analyze: 5m
    - weight: 100
"""
    + ANALYSIS_SETTINGS
    + GATES
)
