from neuraxis.workloads.evaluate.cli import main

main()
