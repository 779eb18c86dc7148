from neuraxis.workloads.edge.cli import main

main()
