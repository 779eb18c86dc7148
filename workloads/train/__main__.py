from neuraxis.workloads.train.cli import main

main()
