"""mlrollout's AWS provider: SageMaker endpoints, CloudWatch metrics and shared S3 state.

Entry points (see ``providers/aws/pyproject.toml``): ``sagemaker`` in ``mlrollout.endpoints``
(:mod:`mlrollout_aws.spec`, importable without boto3) and ``s3`` in ``mlrollout.state``
(:mod:`mlrollout_aws.s3state`). Modules: ``_aws`` (the boto3 seam: clients, retries, error
mapping), ``sagemaker`` (the endpoint adapter), ``cloudwatch`` (the metrics source), ``s3state``
(the state store), ``iam`` (the least-privilege policy), ``naming`` (names, tags, limits).
"""
