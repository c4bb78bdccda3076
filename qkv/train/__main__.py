from .args import main

main()
