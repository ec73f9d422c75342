"""Reading and publishing lists: the reader interface, its DynamoDB and gold-table stores, the
DynamoDB writer and pointer, request validation and the Lambda handlers. Never imports pyspark."""
