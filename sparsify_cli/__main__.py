from sparsify_cli.app import main

main()
