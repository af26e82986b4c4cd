"""mashup.data"""
