"""mashup.select"""
