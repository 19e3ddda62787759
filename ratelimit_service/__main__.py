from ratelimit_service.cli import main

main()
