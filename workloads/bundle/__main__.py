from neuraxis.workloads.bundle.cli import main

main()
