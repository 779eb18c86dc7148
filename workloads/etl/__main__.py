"""`python -m neuraxis.workloads.etl --spec ... --namespace ... --run-id ...`"""

from neuraxis.workloads.etl.cli import main

main()
